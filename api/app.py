"""The FastAPI application: wiring of routes, errors, body limit and lifespan.

``create_app(settings)`` builds the app; its lifespan starts the Kafka
producer (acks=all, idempotent, from ``schemas.kafka``) and the read model
(a consumer thread projecting ``<p>.state`` into RocksDB) and stops both on
shutdown. Startup never waits for the broker: an API without a reachable
cluster still starts, answers ``/healthz`` and reports why it is not ready
on ``/readyz``. ``run_api(settings)`` first refuses topics whose configs
differ from the catalogue (``TopicMismatch``, when the broker answers),
then serves the app with uvicorn and blocks; uvicorn handles SIGTERM/SIGINT
by draining in-flight requests (up to ``settings.shutdown_grace_s``) and
then running the lifespan shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from taskstream.schemas import BrokerUnavailable, Settings, TopicMismatch, catalogue, codec
from taskstream.schemas.kafka import async_producer, require_topics

from . import auth, problems
from .body_limit import BodyLimitMiddleware
from .hosts import TrustedHosts, allowed_hosts
from .metrics import ApiMetrics
from .metrics import router as metrics_router
from .problems import JSONResponse
from .read_model import ReadModel
from .routes import health, ops, schedules, tasks, workflows
from .routes import watch as watch_routes
from .ui import router as ui_router
from .watch import WatchMetrics

log = logging.getLogger(__name__)

#: A produce the broker has not acknowledged within this time fails (503)
#: for good: librdkafka gives up on the record (``message.timeout.ms``), so a
#: 503 never hides a task that is written later.
DEFAULT_PRODUCE_TIMEOUT_S = 10.0
#: How long ``run_api`` waits for the broker to check the topics; a broker that does not answer by then is not
#: waited for (the API starts, ``/readyz`` says why it is not ready).
TOPIC_CHECK_TIMEOUT_S = 5.0


def producer_id() -> str:
    return f"api-{socket.gethostname()}-{os.getpid()}"


def create_app(settings: Settings, *, produce_timeout_s: float = DEFAULT_PRODUCE_TIMEOUT_S) -> FastAPI:
    """The taskstream HTTP API for the cluster and topic prefix of ``settings``.

    Raises ``auth.InsecureConfig`` for settings that would serve it without
    authentication beyond loopback (README "Security").
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pid = producer_id()
        producer = async_producer(settings, pid, {"message.timeout.ms": int(produce_timeout_s * 1000)})
        read_model = ReadModel(settings).start()
        app.state.settings = settings
        app.state.wire = codec.WireFormat.of(settings)
        app.state.producer_id = pid
        app.state.producer = producer
        app.state.read_model = read_model
        app.state.authenticator.start()
        log.info("API started for prefix=%s bootstrap=%s", settings.prefix, settings.bootstrap_servers)
        app.state.grpc = None
        if settings.grpc_port is not None:  # gRPC beside HTTP in this event loop (issue 17); grpcio loads only then
            from . import grpc_server

            app.state.grpc = await grpc_server.start(app)
        try:
            yield
        finally:
            read_model.feed.close()  # live watches end (gRPC, SSE) before the producer and read model stop
            if app.state.grpc is not None:
                await app.state.grpc.stop()
            remaining = await asyncio.to_thread(producer.close, produce_timeout_s)
            if remaining:
                log.warning("API producer closed with %d records undelivered", remaining)
            await asyncio.to_thread(read_model.stop)
            await asyncio.to_thread(app.state.authenticator.stop)
            log.info("API stopped")

    app = FastAPI(
        title="taskstream",
        version="0.1.0",
        lifespan=lifespan,
        default_response_class=JSONResponse,
    )
    app.state.metrics = ApiMetrics()  # before the lifespan: /metrics answers from the first request
    app.state.metrics.registry.register(WatchMetrics(app.state))  # open SSE and gRPC watches
    problems.install(app)

    def openapi() -> dict:
        if app.openapi_schema is None:  # FastAPI's document, built once, with our problem answers
            app.openapi_schema = auth.document(problems.document(FastAPI.openapi(app)), settings)
        return app.openapi_schema

    app.openapi = openapi
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    auth.install(app, settings)  # outside the body limit: who may send a body is settled before it is read
    app.add_middleware(TrustedHosts, hosts=allowed_hosts(settings))  # outermost: a rebinding page gets nothing
    app.include_router(health.router)
    app.include_router(metrics_router)
    app.include_router(watch_routes.router)  # before tasks: /tasks/watch is not a task id
    app.include_router(tasks.router)
    app.include_router(workflows.router)
    app.include_router(schedules.router)
    app.include_router(ops.router)
    app.include_router(ui_router)  # the dashboard at /ui (api/ui)
    return app


def run_api(settings: Settings) -> None:
    """Serve the API on ``settings.api_host:settings.api_port`` until SIGTERM/SIGINT.

    On a signal uvicorn stops accepting connections, lets in-flight requests
    finish (at most ``shutdown_grace_s``), runs the lifespan shutdown (flush
    the producer, stop the read model) and then re-raises the signal, so the
    process exits as killed by SIGTERM (-15) after a clean shutdown.

    Raises ``TopicMismatch`` before serving when a config of an existing
    topic differs from the catalogue (cleanup policy, retention, size limit).
    """
    import uvicorn

    try:
        require_topics(settings, catalogue(settings), TOPIC_CHECK_TIMEOUT_S)
    except TopicMismatch:
        raise
    except BrokerUnavailable as exc:
        log.warning("topics not checked against the catalogue (the broker did not answer): %s", exc)

    config = uvicorn.Config(
        create_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        lifespan="on",
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=int(settings.shutdown_grace_s),
        proxy_headers=False,
        server_header=False,
        access_log=settings.log_level.upper() == "DEBUG",
        # JSON logs: uvicorn's records go through the root logger's JSON handler, not its own text format.
        **({"log_config": None} if settings.log_format == "json" else {}),
    )
    uvicorn.Server(config).run()
