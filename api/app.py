"""The FastAPI application: wiring of routes, errors, body limit and lifespan.

``create_app(settings)`` builds the app and is the one place that builds
the API's parts: authentication, rate limits and metrics at once, and, in
its lifespan, those that reach the cluster (``construct_context``): the
Kafka producer (acks=all, idempotent, from ``schemas.kafka``), the read
model (a consumer thread projecting ``<p>.state`` into RocksDB), the
history reader, the broker probe and the workers directory (a consumer
thread folding ``<p>.workers``). Together they are the one typed
``ApiContext`` (``api.context``) that the routes and the gRPC servicers
receive; shutdown stops them in order. Startup never waits for the
broker: an API without a reachable cluster still starts, answers
``/healthz`` and reports why it is not ready on ``/readyz``.
``run_api(settings)`` first refuses topics whose configs differ from the
catalogue (``TopicMismatch``, when the broker answers), then serves the app
with uvicorn and blocks; uvicorn handles SIGTERM/SIGINT by draining
in-flight requests (up to ``settings.shutdown_grace_s``) and then running
the lifespan shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from taskstream.schemas import BrokerUnavailable, Settings, TopicMismatch, catalogue, codec
from taskstream.schemas.kafka import async_producer, check_security, require_topics
from taskstream.schemas.tracing import OFF, Tracing, tracing_from_environ

from . import auth, problems
from .body_encoding import Utf8BodyMiddleware
from .body_limit import BodyLimitMiddleware
from .context import ApiContext
from .head import HeadAsGetMiddleware
from .history import DEFAULT_LIMITS, HistoryReader, ReadLimits
from .hosts import TrustedHosts, allowed_hosts
from .metrics import ApiMetrics
from .metrics import router as metrics_router
from .probe import BrokerProbe
from .problems import JSONResponse
from .read_model import ReadModel
from .routes import health, limits, ops, pauses, schedules, tasks, triggers, workers, workflows
from .routes import watch as watch_routes
from .ui import router as ui_router
from .watch import WatchMetrics
from .workers import WorkerDirectory

log = logging.getLogger(__name__)

#: A produce the broker has not acknowledged within this time fails: librdkafka gives up on the record
#: (``message.timeout.ms``). A record that reached the broker may still be written, so that answer is 504
#: write-outcome-unknown, never a 503 (``api.service``).
DEFAULT_PRODUCE_TIMEOUT_S = 10.0
#: How long ``run_api`` waits for the broker to check the topics; a broker that does not answer by then is not
#: waited for (the API starts, ``/readyz`` says why it is not ready).
TOPIC_CHECK_TIMEOUT_S = 5.0


def producer_id() -> str:
    return f"api-{socket.gethostname()}-{os.getpid()}"


def construct_context(settings: Settings, *, authenticator: auth.Authenticator, rate_limit: auth.RateLimit,
                      metrics: ApiMetrics, read_limits: ReadLimits, produce_timeout_s: float,
                      producer_overrides: Mapping[str, Any] | None = None, tracing: Tracing = OFF) -> ApiContext:
    """The parts of a running API that connect to the cluster, built here and nowhere else, with those
    ``create_app`` built before (they answer without a broker: authentication, rate limits, metrics).

    Starts the consumer threads of the read model and the workers directory; ``close_context`` stops what this
    started.
    """
    pid = producer_id()
    return ApiContext(
        settings=settings,
        wire=codec.WireFormat.of(settings),
        producer_id=pid,
        producer=async_producer(settings, pid, {"message.timeout.ms": int(produce_timeout_s * 1000),
                                                **(producer_overrides or {})}),
        read_model=ReadModel(settings).start(),
        history=HistoryReader(settings, read_limits),
        read_limits=read_limits,
        probe=BrokerProbe(settings),
        authenticator=authenticator,
        rate_limit=rate_limit,
        metrics=metrics,
        workers=WorkerDirectory(settings).start(),
        tracing=tracing,
    )


async def close_context(ctx: ApiContext, produce_timeout_s: float) -> None:
    """Flush the producer (at most ``produce_timeout_s``), then stop the read model, history reader, probe and
    workers directory."""
    remaining = await asyncio.to_thread(ctx.producer.close, produce_timeout_s)
    if remaining:
        log.warning("API producer closed with %d records undelivered", remaining)
    await asyncio.to_thread(ctx.read_model.stop)
    ctx.history.close()
    await asyncio.to_thread(ctx.probe.close)
    await asyncio.to_thread(ctx.workers.stop)


def create_app(settings: Settings, *, produce_timeout_s: float = DEFAULT_PRODUCE_TIMEOUT_S,
               read_limits: ReadLimits = DEFAULT_LIMITS,
               producer_overrides: Mapping[str, Any] | None = None, tracing: Tracing = OFF) -> FastAPI:
    """The taskstream HTTP API for the cluster and topic prefix of ``settings``.

    ``read_limits`` bounds its expensive reads (history scans, list scans; ``history.ReadLimits``).
    ``producer_overrides`` are librdkafka properties on top of its producer's (the durable ones stay; tests use
    them to provoke the client's failures). ``tracing``: the spans of submits (``schemas.tracing``), shut down
    (its buffered spans exported) with the app.
    Raises ``auth.InsecureConfig`` for settings that would serve it without
    authentication beyond loopback (docs/security.md).
    """
    authenticator = auth.Authenticator(settings)
    rate_limit = auth.RateLimit(settings)
    metrics = ApiMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ctx = construct_context(settings, authenticator=authenticator, rate_limit=rate_limit, metrics=metrics,
                                read_limits=read_limits, produce_timeout_s=produce_timeout_s,
                                producer_overrides=producer_overrides, tracing=tracing)
        app.state.context = ctx  # what the routes' ``Context`` dependency answers
        watchers = WatchMetrics(ctx)  # open SSE and gRPC watches
        metrics.registry.register(watchers)
        authenticator.start()
        log.info("API started for prefix=%s bootstrap=%s", settings.prefix, settings.bootstrap_servers)
        grpc = None
        if settings.grpc_port is not None:  # gRPC beside HTTP in this event loop (issue 17); grpcio loads only then
            from . import grpc_server

            grpc = await grpc_server.start(ctx)
        try:
            yield
        finally:
            ctx.read_model.feed.close()  # live watches end (gRPC, SSE) before the producer and read model stop
            if grpc is not None:
                await grpc.stop()
            await close_context(ctx, produce_timeout_s)
            await asyncio.to_thread(authenticator.stop)
            metrics.registry.unregister(watchers)
            await asyncio.to_thread(tracing.shutdown)
            log.info("API stopped")

    app = FastAPI(
        title="taskstream",
        version="0.1.0",
        lifespan=lifespan,
        default_response_class=JSONResponse,
    )
    problems.install(app)

    def openapi() -> dict:
        if app.openapi_schema is None:  # FastAPI's document, built once, with our problem answers
            app.openapi_schema = auth.document(problems.document(FastAPI.openapi(app)), settings)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to extend its document
    app.add_middleware(Utf8BodyMiddleware)  # inside the body limit: it sees only what the limit lets through
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    # outside the body limit: who may send a body is settled before it is read
    auth.install(app, settings, authenticator, rate_limit)
    app.add_middleware(HeadAsGetMiddleware)  # outside authentication: a HEAD is checked as the GET it stands for
    app.add_middleware(TrustedHosts, hosts=allowed_hosts(settings))  # outermost: a rebinding page gets nothing
    app.include_router(health.router)
    app.include_router(metrics_router)
    app.include_router(watch_routes.router)  # before tasks: /tasks/watch is not a task id
    app.include_router(tasks.router)
    app.include_router(pauses.router)  # before workflows: /workflows/{id}:pause is not a workflow id
    app.include_router(workflows.router)
    app.include_router(schedules.router)
    app.include_router(triggers.router)
    app.include_router(ops.router)
    app.include_router(workers.router)
    app.include_router(limits.router)
    app.include_router(ui_router)  # the dashboard at /ui (api/ui)
    return app


def run_api(settings: Settings) -> None:
    """Serve the API on ``settings.api_host:settings.api_port`` until SIGTERM/SIGINT.

    On a signal uvicorn stops accepting connections, lets in-flight requests
    finish (at most ``shutdown_grace_s``), runs the lifespan shutdown (flush
    the producer, stop the read model) and then re-raises the signal, so the
    process exits as killed by SIGTERM (-15) after a clean shutdown.

    Raises ``TopicMismatch`` before serving when a config of an existing
    topic differs from the catalogue (cleanup policy, retention, size limit),
    and ``SecurityRefused`` when Kafka refuses its credentials or it does not
    trust the broker's certificate (``kafka.check_security``).
    """
    import uvicorn

    check_security(settings)  # refused credentials or an untrusted broker: one line now, not 503s for ever
    try:
        require_topics(settings, catalogue(settings), TOPIC_CHECK_TIMEOUT_S)
    except TopicMismatch:
        raise
    except BrokerUnavailable as exc:
        log.warning("topics not checked against the catalogue (the broker did not answer): %s", exc)

    config = uvicorn.Config(
        create_app(settings, tracing=tracing_from_environ("api", os.environ)),
        host=settings.api_host,
        port=settings.api_port,
        lifespan="on",
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=int(settings.shutdown_grace_s),
        proxy_headers=False,
        server_header=False,
        access_log=settings.log_level.upper() == "DEBUG",
        # JSON logs: uvicorn's records go through the root logger's JSON handler, not its own text format.
        log_config=None if settings.log_format == "json" else uvicorn.config.LOGGING_CONFIG,
    )
    uvicorn.Server(config).run()
