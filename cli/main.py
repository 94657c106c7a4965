"""The ``taskstream`` command.

Settings come from ``TASKSTREAM_*`` environment variables (``Settings``);
options given on the command line override them for that command.
"""

from __future__ import annotations

import logging
import sys

import click

from taskstream.schemas import BrokerUnavailable, Settings, codec

from ._options import GRPC_PORT, METRICS_PORT, broker_options


def _settings(**overrides) -> Settings:
    settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    codec.WireFormat.of(settings)  # refuse a wire format without its registry before anything starts
    return settings


def _logging(settings: Settings) -> None:
    """Log to stderr as text or, with ``TASKSTREAM_LOG_FORMAT=json``, one JSON object a line."""
    from taskstream.schemas.observability import log_handler

    logging.basicConfig(level=settings.log_level.upper(), handlers=[log_handler(settings, sys.stderr)])


@click.group()
@click.version_option(package_name="taskstream", message="%(prog)s %(version)s")
def main() -> None:
    """taskstream: a distributed task scheduler on Kafka."""


@main.command()
@broker_options
@GRPC_PORT
@METRICS_PORT
@click.option("--port", type=int, default=None, help="API port on 127.0.0.1 (default TASKSTREAM_API_PORT, 8080)")
@click.option("--broker-port", type=int, default=9092, show_default=True,
              help="port of the Kafka node dev starts on 127.0.0.1 (not used with TASKSTREAM_BOOTSTRAP_SERVERS)")
@click.option("--brokers", "n_brokers", type=click.IntRange(1), default=1, show_default=True,
              help="Kafka nodes (KRaft, each broker and controller) on consecutive ports from --broker-port, their "
                   "controllers on the ports after those; 3 or more: topics with 3 replicas and min.insync.replicas 2")
@click.option("--processors", "n_processors", type=click.IntRange(1), default=1, show_default=True,
              help="processor processes (each with its own tables under the data directory)")
@click.option("--apis", "n_apis", type=click.IntRange(1), default=1, show_default=True,
              help="API processes on consecutive ports from --port (gRPC ports consecutive too)")
@click.option("--executors", "n_executors", type=int, default=1, show_default=True, help="executor processes")
@click.option("--handlers", multiple=True, help="extra handler module(s) for the executors (repeatable)")
@click.option("--concurrency", type=int, default=None, help="handler slots per executor")
@click.option("--partitions", type=int, default=None, help="partitions per topic (default 6)")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="the broker's log, the processor's tables and the read model (default TASKSTREAM_DATA_DIR, "
                   "./.taskstream); kept across restarts")
@click.option("--fresh", is_flag=True, help="delete the data directory first: start from an empty log")
@click.argument("more_handlers", nargs=-1)
def dev(port, broker_port, n_brokers, n_processors, n_apis, n_executors, handlers, concurrency, partitions, data_dir,
        fresh, more_handlers) -> None:
    """Everything on this machine: Apache Kafka (one KRaft node, or --brokers N), processor, executors and the
    API."""
    from .dev import run_dev

    sys.exit(
        run_dev(
            api_port=port,
            broker_port=broker_port,
            executors=n_executors,
            handlers=[*handlers, *more_handlers],
            concurrency=concurrency,
            partitions=partitions,
            data_dir=data_dir,
            fresh=fresh,
            brokers=n_brokers,
            processors=n_processors,
            apis=n_apis,
        )
    )


@main.group()
def kafka() -> None:
    """The Apache Kafka that `taskstream dev` runs (jars from Maven Central, cached outside the project)."""


@kafka.command("fetch")
def kafka_fetch() -> None:
    """Fetch Kafka's jars with Maven once (Java 17+ and Maven needed) and write the node's class-data archive;
    print where the jars are."""
    from .broker import java_command, warm_up

    try:
        java_command()
        click.echo(warm_up(lambda msg: click.echo(msg, err=True)))
    except BrokerUnavailable as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@broker_options
@METRICS_PORT
def processor() -> None:
    """Run a stream processor (joins the processor group)."""
    from taskstream.streams.processor import run_processor

    settings = _settings()
    _logging(settings)
    try:
        run_processor(settings)
    except BrokerUnavailable as exc:
        raise click.ClickException(str(exc)) from None


@main.command("trigger-runner")
@broker_options
def trigger_runner() -> None:
    """Run a trigger runner: every record of an active topic trigger's topic creates one task."""
    from taskstream.streams.triggers import run_trigger_runner

    settings = _settings()
    _logging(settings)
    try:
        run_trigger_runner(settings)
    except BrokerUnavailable as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@broker_options
@METRICS_PORT
@click.option("--handlers", multiple=True, help="handler module(s) to import (repeatable)")
@click.option("--concurrency", type=int, default=None, help="handler slots (default TASKSTREAM_EXECUTOR_CONCURRENCY)")
@click.argument("more_handlers", nargs=-1)
def executor(handlers, concurrency, more_handlers) -> None:
    """Run an executor: joins the executor group and runs handlers."""
    from taskstream.executors import HandlerImportError, run_executor

    settings = _settings()
    _logging(settings)
    try:
        run_executor(settings, [*handlers, *more_handlers], concurrency)
    except HandlerImportError as exc:
        raise click.ClickException(str(exc)) from None
    except BrokerUnavailable as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@broker_options
@GRPC_PORT
@click.option("--host", default=None, help="listen address (default 127.0.0.1)")
@click.option("--port", type=int, default=None, help="listen port (default 8080)")
def api(host, port) -> None:
    """Serve the HTTP API."""
    from taskstream.api import run_api
    from taskstream.api.auth import InsecureConfig

    settings = _settings(api_host=host, api_port=port)
    _logging(settings)
    try:
        run_api(settings)
    except (InsecureConfig, BrokerUnavailable) as exc:  # a topic config other than the catalogue's among them
        raise click.ClickException(str(exc)) from None


@main.group()
def dlq() -> None:
    """Dead letters: tasks that failed for good and poison messages in <prefix>.dlq."""


@dlq.command("list")
@broker_options
@click.option("--json", "as_json", is_flag=True, help="one JSON object a line instead of the table")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="only the newest N records")
@click.option("--timeout", type=float, default=15.0, show_default=True, help="seconds to wait for the broker")
def dlq_list(as_json, limit, timeout) -> None:
    """List <prefix>.dlq up to now, oldest first (newest last).

    A dead-lettered task shows its id, attempt, handler, priority and error;
    a poison message (one no consumer could decode) shows where it came from,
    its size and why it was rejected. A task dead-lettered again after a
    redrive has one line per time.
    """
    from taskstream.schemas.kafka import LIBRDKAFKA_LOG

    from .dlq import DlqError, json_lines, read_dlq, table_lines

    LIBRDKAFKA_LOG.setLevel(logging.CRITICAL)  # the error below says it once, clearly
    try:
        records = read_dlq(_settings(), timeout=timeout)
    except DlqError as exc:
        raise click.ClickException(str(exc)) from None
    if limit is not None:
        records = records[-limit:]
    lines = json_lines(records) if as_json else table_lines(records)
    for line in lines:
        click.echo(line)


@dlq.command("redrive")
@broker_options
@click.argument("task_ids", nargs=-1)
@click.option("--all", "redrive_all", is_flag=True, help="every task id that has a TaskDeadLettered in <prefix>.dlq")
@click.option("--reason", default="", help="why, recorded in the TaskRedriven events")
@click.option("--timeout", type=float, default=15.0, show_default=True, help="seconds to wait for the broker")
def dlq_redrive(task_ids, redrive_all, reason, timeout) -> None:
    """Re-open failed tasks: append TaskRedriven(TASK_ID) to <prefix>.events.

    Give task ids, or --all for every task dead-lettered in <prefix>.dlq
    (poison messages are skipped: they are not tasks). A re-opened task gets
    a fresh budget of attempts, its next attempt is queued at once, and
    dependents that were upstream_failed because of it are re-opened too.
    The processor ignores TaskRedriven for a task that is not failed or
    upstream_failed, so redriving a task twice, or one that is already
    running again, is harmless.
    """
    from datetime import UTC, datetime

    from taskstream.schemas import Topics
    from taskstream.schemas.kafka import LIBRDKAFKA_LOG

    from .dlq import DlqError, producer_name, read_dlq, redrive_events, send_redrives

    if bool(task_ids) == redrive_all:
        raise click.UsageError("give task ids or --all, not both" if redrive_all else "give task ids or --all")
    LIBRDKAFKA_LOG.setLevel(logging.CRITICAL)
    settings = _settings()
    skipped = 0
    try:
        if redrive_all:
            records = read_dlq(settings, timeout=timeout)
            task_ids = [r.event.task_id for r in records if r.event is not None]
            skipped = sum(1 for r in records if r.event is None)
        events = redrive_events(task_ids, reason, datetime.now(UTC), producer_name())
        sent = send_redrives(settings, events, timeout=timeout) if events else 0
    except DlqError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"sent {sent} TaskRedriven event(s) to {Topics(settings.prefix).events}")
    if skipped:
        click.echo(f"skipped {skipped} poison record(s): they are not tasks")


@main.group()
def state() -> None:
    """Task state rebuilt from the event log: verify, repair, time travel."""


@state.command("rebuild")
@broker_options
@click.option("--verify", is_flag=True, help="compare with the live <prefix>.state; exit 1 on any difference")
@click.option("--write", is_flag=True,
              help="republish the rebuilt states to <prefix>.state (stop the processors first)")
@click.option("--json", "as_json", is_flag=True, help="one JSON object a line (differences, then the summary)")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="fold processes (default: 1 for small logs, else cores)")
@click.option("--timeout", type=float, default=15.0, show_default=True, help="seconds to wait for the broker")
def state_rebuild(verify, write, as_json, workers, timeout) -> None:
    """Fold all of <prefix>.events again with the processor's pure core.

    Prints the tasks checked, events folded and events/s. With --verify, each
    difference from the live state (id, field, live value, rebuilt value);
    with --write, the rebuilt states are written to <prefix>.state, from which
    processors rebuild their tables and the API its read model.
    """
    from taskstream.schemas.kafka import LIBRDKAFKA_LOG

    from .state import run_rebuild

    LIBRDKAFKA_LOG.setLevel(logging.CRITICAL)  # the error says it once, clearly
    sys.exit(run_rebuild(_settings(), verify, write, as_json, workers, timeout))


@state.command("at")
@broker_options
@click.argument("when", metavar="TIME")
@click.option("--task", "task_id", default=None, help="only this task")
@click.option("--json", "as_json", is_flag=True, help="one JSON object a line (tasks as the API shows them)")
@click.option("--timeout", type=float, default=15.0, show_default=True, help="seconds to wait for the broker")
def state_at(when, task_id, as_json, timeout) -> None:
    """Tasks as they were at TIME (RFC 3339), folded from the events that occurred by then."""
    from taskstream.api.models import parse_rfc3339
    from taskstream.schemas.kafka import LIBRDKAFKA_LOG

    from .state import run_at

    try:
        at = parse_rfc3339(when)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="TIME") from None
    LIBRDKAFKA_LOG.setLevel(logging.CRITICAL)
    sys.exit(run_at(_settings(), at, task_id, as_json, timeout))


@main.command()
@click.option("-n", "count", type=int, default=5000, show_default=True, help="no-op tasks to submit")
@click.option("--url", default=None, help="target the running API at this URL")
@click.option("--start-stack", is_flag=True,
              help="instead of --url: start a `taskstream dev` stack of its own on free ports (and stop it after)")
@click.option("--clients", type=int, default=4, show_default=True, help="concurrent HTTP connections")
@click.option("--executors", type=int, default=1, show_default=True)
@click.option("--chain", type=int, default=None,
              help="instead: a workflow chain of N dependent no-op tasks; per-hop latency")
@click.option("--batch", type=click.IntRange(min=1, max=1000), default=None,
              help="submit through POST /tasks:batch, this many tasks a request")
@click.option("--json", "as_json", is_flag=True, help="print the figures as one JSON object")
@click.option("--prefill-events", type=click.IntRange(min=0), default=0, show_default=True,
              help="first grow the log by about this many events (no-op tasks in batches, waited for), "
                   "to measure a stack with a long log")
@click.option("--rebuild", "rebuild_mode", is_flag=True,
              help="instead: events folded per second by `state rebuild` over a synthetic log of --events events")
@click.option("--events", "n_events", type=click.IntRange(min=1), default=1_000_000, show_default=True,
              help="events in the --rebuild log")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="--rebuild: fold processes (default: cores)")
@click.option("--profile", type=click.Path(dir_okay=False), default=None, help="--rebuild: write cProfile stats here")
@click.option("--grpc", "grpc_target", default=None, metavar="HOST:PORT",
              help="submit through the gRPC API at HOST:PORT (with --url; the wait stays on HTTP)")
def bench(count, url, start_stack, clients, executors, chain, batch, as_json, prefill_events, rebuild_mode, n_events,
          workers, profile, grpc_target) -> None:
    """Submit N no-op tasks; print throughput and submit->start latency (or --chain N: per-hop latency).

    Give the API to measure (--url) or let bench start a stack of its own (--start-stack).
    """
    from .bench import run_bench, run_chain_bench, run_rebuild_bench

    if not rebuild_mode and (url is None) == (not start_stack):
        raise click.UsageError("give either --url URL (a running API) or --start-stack (a stack of its own)")
    if rebuild_mode:
        sys.exit(run_rebuild_bench(n_events, as_json=as_json, workers=workers, profile=profile))
    if chain is not None:
        sys.exit(run_chain_bench(chain, url=url, executors=executors, as_json=as_json))
    sys.exit(run_bench(count=count, url=url, clients=clients, executors=executors, as_json=as_json, batch=batch,
                       prefill_events=prefill_events, grpc_target=grpc_target))


@main.group()
def keys() -> None:
    """API keys (TASKSTREAM_AUTH_API_KEYS=true on the API): create, list, revoke. Kept in <prefix>.admin."""


def _keys_call(fn, *args, **kwargs):
    from taskstream.schemas.kafka import LIBRDKAFKA_LOG

    from .keys import KeysError

    LIBRDKAFKA_LOG.setLevel(logging.CRITICAL)  # the error below says it once, clearly
    try:
        return fn(_settings(), *args, **kwargs)
    except KeysError as exc:
        raise click.ClickException(str(exc)) from None


def _key_json(k) -> dict:
    iso = lambda t: None if t is None else t.isoformat().replace("+00:00", "Z")  # noqa: E731
    return {"id": k.key_id, "name": k.name, "role": k.role, "handlers": k.handlers, "created_at": iso(k.created_at),
            "created_by": k.producer, "revoked_at": iso(k.revoked_at)}


@keys.command("create")
@broker_options
@click.option("--role", required=True, type=click.Choice(["reader", "submitter", "operator", "admin"]))
@click.option("--name", required=True, help="what the key is for (shown by keys list)")
@click.option("--handler", "handlers", multiple=True,
              help="only submit to handlers matching this pattern (fnmatch, repeatable; default: any)")
@click.option("--json", "as_json", is_flag=True, help="print the key and its record as one JSON object")
@click.option("--timeout", type=float, default=15.0, show_default=True, help="seconds to wait for the broker")
def keys_create(role, name, handlers, as_json, timeout) -> None:
    """Create an API key and print it once: only its SHA-256 is stored."""
    from .keys import create_key

    key, record = _keys_call(create_key, role, name, list(handlers), timeout)
    if as_json:
        click.echo(codec.dumps_json({"key": key, **_key_json(record)}))
        return
    click.echo(key)
    click.echo(f"id {record.key_id}, role {record.role}, name {record.name!r}: keep the key now, it is not shown "
               "again. Send it as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'.", err=True)


@keys.command("list")
@broker_options
@click.option("--json", "as_json", is_flag=True, help="one JSON object a line")
@click.option("--timeout", type=float, default=15.0, show_default=True, help="seconds to wait for the broker")
def keys_list(as_json, timeout) -> None:
    """Every API key, oldest first (revoked ones too; never the keys themselves)."""
    from .keys import list_keys

    for k in _keys_call(list_keys, timeout):
        d = _key_json(k)
        if as_json:
            click.echo(codec.dumps_json(d))
        else:
            state = f"revoked {d['revoked_at']}" if k.revoked_at else "active"
            limit = f" handlers {','.join(k.handlers)}" if k.handlers else ""
            click.echo(f"{k.key_id}  {k.role:<9}  {state:<32}  {d['created_at']}  {k.name}{limit}")


@keys.command("revoke")
@broker_options
@click.argument("key_id")
@click.option("--timeout", type=float, default=15.0, show_default=True, help="seconds to wait for the broker")
def keys_revoke(key_id, timeout) -> None:
    """Revoke KEY_ID for good. Every API refuses it within TASKSTREAM_AUTH_API_KEY_MAX_STALENESS_S (10 s)."""
    from .keys import revoke_key

    record = _keys_call(revoke_key, key_id, timeout)
    click.echo(f"revoked {record.key_id} ({record.name}) at {_key_json(record)['revoked_at']}")


from .log_commands import COMMANDS as _LOG_COMMANDS  # noqa: E402  (events, topics, lag)

for _command in _LOG_COMMANDS:
    main.add_command(_command)

from .acls import COMMANDS as _ACL_COMMANDS  # noqa: E402  (acls plan|apply)

for _command in _ACL_COMMANDS:
    main.add_command(_command)

from .tasks import COMMANDS as _CLIENT_COMMANDS  # noqa: E402  (tasks, workflows, schedules: through the HTTP client)

for _command in _CLIENT_COMMANDS:
    main.add_command(_command)

from .workers import workers as _workers  # noqa: E402  (through the HTTP client)

main.add_command(_workers)
from .limits import limits as _limits  # noqa: E402  (through the HTTP client)

main.add_command(_limits)

from .pauses import handlers as _handlers  # noqa: E402  (handlers pause|resume|paused; workflows pause|resume)

main.add_command(_handlers)

from .triggers import triggers as _triggers  # noqa: E402  (through the HTTP client)

main.add_command(_triggers)


if __name__ == "__main__":  # pragma: no cover
    main()
