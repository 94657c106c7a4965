"""The ``taskstream`` command.

Settings come from ``TASKSTREAM_*`` environment variables (``Settings``);
options given on the command line override them for that command.
"""

from __future__ import annotations

import logging
import sys

import click

from taskstream.schemas import BrokerUnavailable, Settings, catalogue


def _settings(**overrides) -> Settings:
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def _logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@click.group()
def main() -> None:
    """taskstream: a distributed task scheduler on Kafka."""


@main.command()
@click.option("--port", type=int, default=8080, show_default=True, help="API port on 127.0.0.1")
@click.option("--broker-port", type=int, default=9092, show_default=True, help="embedded broker port")
@click.option("--executors", "n_executors", type=int, default=1, show_default=True, help="executor processes")
@click.option("--handlers", multiple=True, help="extra handler module(s) for the executors (repeatable)")
@click.option("--concurrency", type=int, default=None, help="handler slots per executor")
@click.option("--partitions", type=int, default=None, help="partitions per topic (default 6)")
@click.option("--data-dir", type=click.Path(), default=None, help="RocksDB files (default: a fresh temp dir)")
@click.argument("more_handlers", nargs=-1)
def dev(port, broker_port, n_executors, handlers, concurrency, partitions, data_dir, more_handlers) -> None:
    """Everything on this machine: embedded broker, processor, executors and the API."""
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
        )
    )


@main.command()
def processor() -> None:
    """Run a stream processor (joins the processor group)."""
    from taskstream.streams.processor import run_processor

    settings = _settings()
    _logging(settings)
    try:
        run_processor(settings)
    except BrokerUnavailable as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
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
@click.option("--host", default=None, help="listen address (default 127.0.0.1)")
@click.option("--port", type=int, default=None, help="listen port (default 8080)")
def api(host, port) -> None:
    """Serve the HTTP API."""
    from taskstream.api import run_api

    settings = _settings(api_host=host, api_port=port)
    _logging(settings)
    run_api(settings)


@main.group()
def topics() -> None:
    """Topic tooling."""


@topics.command("create")
@click.option("--partitions", type=int, default=None)
@click.option("--timeout", type=float, default=15.0, show_default=True, help="seconds to wait for the broker")
def topics_create(partitions, timeout) -> None:
    """Create taskstream's topics (idempotent); report topics that differ."""
    from taskstream.schemas.kafka import LIBRDKAFKA_LOG, ensure_topics, wait_for_broker

    LIBRDKAFKA_LOG.setLevel(logging.CRITICAL)  # the error below says it once, clearly
    settings = _settings(partitions=partitions)
    try:
        wait_for_broker(settings, timeout=timeout)
        problems = ensure_topics(settings, catalogue(settings))
    except BrokerUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    for spec in catalogue(settings):
        click.echo(f"{spec.name}\t{spec.partitions}\t{spec.config.get('cleanup.policy', '')}")
    for p in problems:
        click.echo(f"problem: {p}", err=True)
    sys.exit(1 if problems else 0)


@main.command()
@click.option("-n", "count", type=int, default=5000, show_default=True, help="no-op tasks to submit")
@click.option("--url", default=None, help="target a running API instead of starting `taskstream dev`")
@click.option("--clients", type=int, default=4, show_default=True, help="concurrent HTTP connections")
@click.option("--executors", type=int, default=1, show_default=True)
@click.option("--chain", type=int, default=None, help="instead: a workflow chain of N dependent no-op tasks; per-hop latency")
@click.option("--json", "as_json", is_flag=True, help="print the figures as one JSON object")
def bench(count, url, clients, executors, chain, as_json) -> None:
    """Submit N no-op tasks; print throughput and submit->start latency (or --chain N: per-hop latency)."""
    from .bench import run_bench, run_chain_bench

    if chain is not None:
        sys.exit(run_chain_bench(chain, url=url, executors=executors, as_json=as_json))
    sys.exit(run_bench(count=count, url=url, clients=clients, executors=executors, as_json=as_json))


if __name__ == "__main__":  # pragma: no cover
    main()
